"""Serving: many requests in one batched denoiser call, each at its own step, each with its own cache.

* ``request.py`` -- :class:`ServingRequest` (one request's schedule, its branches' cached state, its step
  counter and tally) and :class:`Row` (one batch row: a request's branch).
* ``batched.py`` -- :class:`BatchedCache`: one engine tick = one model call on the rows that compute; the
  other rows are forecast from their own request's state; outputs back in order.
* ``device_math.py`` -- :class:`DeviceForecaster` and :class:`DeviceRule`: the forecaster and the threshold
  rule with their whole state on the device.
* ``device_step.py`` -- :class:`DeviceStepCache`: one run's steps, the compute/forecast choice made on the
  device (``torch.cond`` or a select), no host read per step.
"""
