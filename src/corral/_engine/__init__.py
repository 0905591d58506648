"""Private building blocks of the async engine; the public names live in `corral.engine`."""
