"""Async rollouts: a worker process samples and scores the next batches while the trainer updates.

- :mod:`grpo.worker.client`: the trainer's side (:class:`~grpo.worker.client.AsyncRollouts`): starts the worker,
  pushes weights after each step and checks their fingerprints, takes scored batches in order, saves what is in
  flight into checkpoints, and turns every worker failure into one line.
- :mod:`grpo.worker.process`: the worker's main loop: its own policy copy, backend, rewards and data stream.
- :mod:`grpo.worker.wire`: scored batches as plain data (tensors, text, JSON), for the pipe and for checkpoints.

The schedule (docs/rollout.md): with ``max_staleness`` N, batch k is sampled from the weights after step
k - 1 - N (clamped to the first weights of the session) and trained at step k, so the weights that sample it are N
optimizer steps behind the weights that train on it. Nothing depends on which process is faster: a seeded async run
gives the same metrics every time.
"""
