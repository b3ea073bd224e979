"""ESMTP: the pure grammar, the DATA/BDAT receivers, and the server session."""
