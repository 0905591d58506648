"""Model implementations for paged attention over flattened varlen batches."""
