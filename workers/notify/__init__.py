"""Signed webhooks: a job's ``notify.url`` gets an event on the job's terminal state (torch-free).

``signing`` signs and verifies per the Standard Webhooks spec, ``keys`` finds a tenant's secrets,
``urls`` decides which URLs may be called (SSRF policy), ``events`` builds an event from a
manifest and ``dispatch`` keeps the Redis outbox and makes the delivery attempts.
"""
