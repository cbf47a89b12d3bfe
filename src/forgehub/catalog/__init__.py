"""The marketplace catalogue: AI4OS v2 metadata, versions, search with facets."""
