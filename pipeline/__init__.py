"""The offline prior-precompute job and the `aisdiff` command line."""
