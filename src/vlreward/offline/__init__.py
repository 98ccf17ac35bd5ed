"""Offline scoring at scale (``vlreward score --engine ray``): input rows split into shards our code defines
(a file and a row range), each shard prepared on CPU workers, scored by a pool of actors that each hold one
backend, and written as one Parquet file; a manifest in the output folder records finished shards, so a rerun
of the same command resumes and every row ends up exactly once (scored, or in ``errors.jsonl``).

- :mod:`.inputs`: reading JSONL, Parquet and Hugging Face ``datasets`` folders; row ids; the shards; the
  input's hash.
- :mod:`.shards`: one shard's preparation, scoring and output; the manifest.
- :mod:`.ray_engine`: the Ray Data pipeline (imports Ray; the ``ray`` extra).
"""
