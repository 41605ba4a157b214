"""loopstream: live analysis of dislocation loops in in-situ TEM."""
