"""Late fusion of trained members.

- `evaluator`: `fuse(config)` loads, checks, fits, scores, reports and writes the ensemble;
- `members`: each trainer workdir's export (re-exporting a stale one), checked and aligned;
- `strategies`: the fusion strategies (numpy / scikit-learn only), each fitted on the
  selection split;
- `bootstrap`: percentile bootstrap intervals (each system, and fusion minus each member);
- `report`: report.json / report.md / PNGs / TensorBoard text and images;
- `config`: the default fusion config.

This package's own import is empty, so `strategies` loads without the trainer's modules (the
ensemble artefact and `cer_jax.predict` need no TensorFlow).
"""
