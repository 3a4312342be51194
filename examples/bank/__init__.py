"""A small bank: accounts that are opened, credited, debited and transfer money atomically."""
