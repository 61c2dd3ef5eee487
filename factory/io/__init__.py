"""Layer 0, data in and out: local or ``s3://`` storage, tagged corpora and their
listings, decoding video and audio, the letterbox geometry, Parquet shard stores, reject
records, and the synthetic tagged world. No torch models, no Ray."""
