package OrchDemo::Hello;

# The demo response handler at /hello: says which tenant answered, as which uid and pid,
# and what the front proxy told it about the client, so a request through the proxy shows
# whose server it reached and how.

use strict;
use warnings;

use Apache2::RequestRec ();
use Apache2::RequestIO ();
use Apache2::RequestUtil ();
use APR::Table ();
use Apache2::Const -compile => qw(OK);

sub handler {
    my $r = shift;
    my $tenant = $r->dir_config('OrchTenant') // 'unknown';
    my $in = $r->headers_in;
    $r->content_type('text/plain');
    $r->print("hello from tenant $tenant: uid=$< pid=$$ mod_perl=$ENV{MOD_PERL}\n");
    for my $header (qw(Host X-Forwarded-For X-Forwarded-Host X-Forwarded-Proto)) {
        $r->print("$header: " . ($in->get($header) // '') . "\n");
    }
    return Apache2::Const::OK;
}

1;
