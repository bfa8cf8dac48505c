"""The experiment on disk: its layout, and every read and write of it, local or at a URI.

`search` writes an experiment and `analysis` reads it; both go through this package, and it
imports neither of them, nor torch:

    layout      the experiment's file names; experiment.json and trials.json
    records     a trial's result records: its epochs, its best epoch, its time at full budget
    best_config best/<strategy>.yaml, the config that reruns a trial
    atomic      atomic writes, and DiskFullError
    uri         experiments at s3://, gs:// and other pyarrow URIs
    tune_storage    the filesystem Tune writes a local experiment through: each file whole
"""
