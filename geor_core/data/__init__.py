"""Data: manifests and their formats, image references and loading, Chain-of-Region rows, prepare's blocks and outputs, prepared datasets, shards, new rows and the synthetic world."""
