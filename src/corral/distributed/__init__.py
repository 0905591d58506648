"""Distributed corral on Ray: the engine core in an actor, data-parallel replicas.

Importing this package does not import Ray; the modules that need it import it
when a distributed engine is actually opened (see `ray_utils.init_ray`).
"""
