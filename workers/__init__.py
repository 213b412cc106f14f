"""Ray workers of verl-avsd (installed as `verl_avsd.workers`)."""
