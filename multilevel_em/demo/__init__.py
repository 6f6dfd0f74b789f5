"""The main job behind ``mlem demo``: EM against ML-EM on the shipped digits ladder (:mod:`.images`) and on
the synthetic HTMC ladder (:mod:`.htmc`). The benchmarks live apart, in :mod:`multilevel_em.bench`."""
