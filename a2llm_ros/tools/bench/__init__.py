"""Benchmarks that print figures: model core, speech codec, engines, turn-taking, graph."""
