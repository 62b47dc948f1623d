"""Remotes as storage: the object store's edge (``bucket``), verified ranged transfers
(``transfer``), and the bounded local cache a lazily mounted snapshot reads through (``cache``)."""
