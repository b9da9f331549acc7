from snakemq_proto import Engine, Message, MessageReceived


def test_two_engines_exchange_a_message() -> None:
    a, b = Engine("alice"), Engine("bob")
    a.send_message("bob", Message(b"hi", ttl=10), 0.0)
    a.connection_made("a", 0.0)
    b.connection_made("b", 0.0)
    received = []
    for _ in range(5):
        x, y = a.data_to_send("a"), b.data_to_send("b")
        a.data_sent("a", len(x))
        b.data_sent("b", len(y))
        received += [e for e in b.receive_data("b", x, 0.0) if isinstance(e, MessageReceived)]
        a.receive_data("a", y, 0.0)
    assert [e.message.data for e in received] == [b"hi"]
