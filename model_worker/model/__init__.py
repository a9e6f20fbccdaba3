"""The model side: adapters per family, loading, the label-embedding cache and the batching engine."""
