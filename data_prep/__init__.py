"""Dataset preparation into verl parquet with privileged views (installed as `verl_avsd.data_prep`)."""
