"""Raw data in, prepared rows out: the pinned downloads (the base model too), the source readers and `just prepare`.
No torch."""
