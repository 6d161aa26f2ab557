"""dask-eventbus top: a live terminal view of every cluster on the bus."""
