"""One file per schema revision, numbered ``rev_NNNN_<what>.py``."""
