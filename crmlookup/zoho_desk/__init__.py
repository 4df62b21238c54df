"""Zoho Desk: the caller's open tickets as a routing source (``Tickets`` in a lookup order), and call activities on them.

Desk runs beside whichever CRM answers ``crm.backend`` (Zoho CRM, the local
directory, ...): its settings are the ``[zoho_desk]`` section, its token its
own. Nothing here is imported until a policy's lookup order names ``Tickets``.
"""
