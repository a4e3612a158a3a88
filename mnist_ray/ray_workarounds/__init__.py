"""Every workaround for a Ray behaviour and every use of a private Ray API, one module each (Ray 2.60).

A Ray upgrade touches this folder only: ``tests/test_ray_boundary.py`` fails, naming file and line, when a private
Ray name appears anywhere else in ``mnist_ray/`` or ``jobs/``. Each module's docstring names the Ray behaviour it
works around and the tests that fail if Ray changes it.

- :mod:`.address_file`: where ``ray start`` records its head (Ray's private rule).
- :mod:`.loopback_node`: a new local instance's node on 127.0.0.1.
- :mod:`.own_address`: each local instance's own GCS address for its processes, so none guesses "auto".
- :mod:`.local_start`: one local start at a time, so each gets a dashboard port.
- :mod:`.rendezvous`: torch's DDP rendezvous on loopback when the node is.
- :mod:`.output`: Ray's raylet dumps and Ray Data's actor-argument line kept out of the output.
- :mod:`.autoscaling_coordinator`: Ray's ``AutoscalingCoordinator`` started early, by the driver.
- :mod:`.placement_groups`: placement groups Ray Train's cleaner misses, freed during and after a sweep.
- :mod:`.loggers`: Ray's loggers quieted or shown by name.
"""
