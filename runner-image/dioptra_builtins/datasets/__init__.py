"""Dataset plugins: small labelled datasets that ship with the field libraries."""
