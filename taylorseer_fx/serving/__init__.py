"""Serving: many requests in one batched denoiser call, each at its own step, each with its own cache.

* ``request.py`` -- :class:`ServingRequest` (one request's schedule, its branches' cached state, its step
  counter and tally) and :class:`Row` (one batch row: a request's branch).
* ``batched.py`` -- :class:`BatchedCache`: one engine tick = one model call on the rows that compute; the
  other rows are forecast from their own request's state; outputs back in order.
"""
