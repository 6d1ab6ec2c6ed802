package OrchDemo::Hello;

# The demo response handler at /hello: says which tenant answered, and as which uid and
# pid, so a request through the front proxy shows whose server it reached.

use strict;
use warnings;

use Apache2::RequestRec ();
use Apache2::RequestIO ();
use Apache2::RequestUtil ();
use Apache2::Const -compile => qw(OK);

sub handler {
    my $r = shift;
    my $tenant = $r->dir_config('OrchTenant') // 'unknown';
    $r->content_type('text/plain');
    $r->print("hello from tenant $tenant: uid=$< pid=$$ mod_perl=$ENV{MOD_PERL}\n");
    return Apache2::Const::OK;
}

1;
