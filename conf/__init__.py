"""Hydra config groups of rlvr (a package so `pkg://rlvr.conf` finds them once installed)."""
