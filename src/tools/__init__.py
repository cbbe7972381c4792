"""Tool bodies of :class:`~src.agent.PandaDocTrialistAgent`, one module per concern.

:mod:`.runtime` is what every body runs on (breakers, retries, the tool deadline,
filler speech); :mod:`.usage` reads product usage, :mod:`.crm` finds the CRM record and
writes to it, :mod:`.demo` offers and books demo times.
"""
