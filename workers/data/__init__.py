"""Data sets: the Parquet shard format (shards), where data comes from (sources), Ray Data streams (streams)."""
