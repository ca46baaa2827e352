"""Integrations with frameworks and tools, each an optional import.

- :mod:`resilient_smtp.contrib.django`: a Django email backend (needs Django);
- :mod:`resilient_smtp.contrib.celery`: what a task queue should do with a
  :class:`~resilient_smtp.SendResult` (needs nothing: any ``task.retry``);
- :mod:`resilient_smtp.contrib.otel`: OpenTelemetry metrics from the
  library's events (the ``otel`` extra).

Nothing here is imported by ``import resilient_smtp``.
"""
