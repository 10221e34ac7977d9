"""Embedding an archive on a Ray cluster: plan shards, embed each with a pure function, resume."""
