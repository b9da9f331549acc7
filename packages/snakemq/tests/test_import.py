import snakemq


def test_package_imports() -> None:
    assert snakemq.__doc__
