"""IAM policies as data: an evaluator, the template's policies per principal, the call audit.

Used by the tests' call audit and by the embedded stack's provisioning; never by
`fedasync.core` (the import-linter contract keeps the core free of it).
"""
