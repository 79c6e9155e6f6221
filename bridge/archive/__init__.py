"""Archive packages: the monthly snapshot, its MDTO metadata and HTML transcripts."""
