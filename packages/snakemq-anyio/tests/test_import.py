import snakemq_anyio


def test_package_imports() -> None:
    assert snakemq_anyio.__doc__
