"""runwire's pure pipeline library: steps, composition, runner and hooks, dirty planning,
pipeline files, built-in numpy/h5py steps. No asyncio, no HTTP."""
