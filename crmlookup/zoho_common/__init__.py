"""What Zoho CRM (:mod:`crmlookup.zoho`) and Zoho Desk (:mod:`crmlookup.zoho_desk`) share.

Both are Zoho services behind the same accounts server: the same OAuth
credentials keys, the same data centres, the same guarded request path
(concurrency slots, circuit breaker, token, timed exchange, counted and
recorded). Each backend keeps only what its API does differently.
Nothing here is imported by the package itself, so reading settings stays cheap.
"""
