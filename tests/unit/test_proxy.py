from orchestrator.proxy import FrontProxy, Route


def test_render_routes_each_hostname_and_replaces_forwarding_headers(config):
    text = FrontProxy(config).render([
        Route("b", "b.example.test", "10.251.0.5", 20001),
        Route("a", "a.example.test", "10.251.0.3", 20000),
        Route("c", "c.example.test", "10.251.0.7", 20002, stopped=True),
    ])
    assert text.index("server_name a.example.test") < text.index("server_name b.example.test")
    assert "proxy_pass http://10.251.0.3:20000;" in text
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in text
    assert "$proxy_add_x_forwarded_for" not in text
    assert "listen 127.0.0.1:18999 default_server;" in text
    assert 'return 503 "orch: this site is stopped\\n";' in text
    assert "proxy_pass http://10.251.0.7" not in text
    assert f"pid {config.proxy_dir}/nginx.pid;" in text


def test_no_routes_still_answers_404(config):
    text = FrontProxy(config).render([])
    assert "return 404" in text and "proxy_pass" not in text
