"""Ray Tune sweeps over any config keys (λ_con, learning rates, n_critic, ...) of any model.

    python -m ssagan_dist.tune --config tiny_cpu --sweep ssagan_tiny_asha [key=value ...]
    python -m ssagan_dist.tune report runs/ssagan_tiny_asha

Each trial is a Ray Train V2 run of ``ssagan_dist.train``'s loop (``trainable.SweepTrial``); the
sweep file (``sweep.py``) names the space, metric, search and scheduler; ``runner.run_sweep``
drives Tune and picks the winner; ``report.write_report`` writes report.html and trials.csv.
Guide: docs/tuning.md.
"""
