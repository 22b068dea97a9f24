"""Running a Clay encoder over chips: embeddings as GeoParquet (`embeddings`), rank sharding (`ranks`) and the
GeoParquet helpers shared with prediction and search (`geoparquet`)."""
