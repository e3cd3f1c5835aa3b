"""Demos: `attnseg demo` on sample scenes of the synthetic world."""
