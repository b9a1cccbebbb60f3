"""The built-in model families, one module each; every module here is imported by
`vision_ar.family.load_builtin_families` and registers its family (see docs/family_contract.md)."""
