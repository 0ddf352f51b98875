"""Leaves every stage uses: errors, atomic writes, weight-file checks, the hub, units, paths,
figures and determinism. Nothing here imports another part of lh_convert."""
