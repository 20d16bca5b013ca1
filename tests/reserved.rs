//! The names `#[worker]` refuses for proxied methods are exactly the public methods of the
//! generated mediator: its constructor, the `pub fn`s of `Mediator` (reached through `Deref`)
//! and `deref`/`deref_mut`. A name missing from the list would let a proxy silently hide a
//! `Mediator` method; an extra name refuses a method for nothing.

use std::collections::BTreeSet;

use syn::visit::Visit;

include!("../worker-macros/src/reserved.rs");

/// Collects the `pub fn`s of every `impl ... Mediator<...>` block.
#[derive(Default)]
struct MediatorMethods {
    names: BTreeSet<String>,
}

impl<'ast> Visit<'ast> for MediatorMethods {
    fn visit_item_impl(&mut self, item: &'ast syn::ItemImpl) {
        let is_mediator = matches!(&*item.self_ty, syn::Type::Path(path)
            if path.path.segments.last().is_some_and(|s| s.ident == "Mediator"));
        if is_mediator {
            for impl_item in &item.items {
                if let syn::ImplItem::Fn(function) = impl_item
                    && matches!(function.vis, syn::Visibility::Public(_))
                {
                    self.names.insert(function.sig.ident.to_string());
                }
            }
        }
        syn::visit::visit_item_impl(self, item);
    }
}

#[test]
fn reserved_names_are_the_mediators_public_methods() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/worker-core/src/mediator.rs");
    let source = std::fs::read_to_string(path).expect("reading worker-core/src/mediator.rs");
    let file = syn::parse_file(&source).expect("parsing worker-core/src/mediator.rs");
    let mut methods = MediatorMethods::default();
    methods.visit_file(&file);
    let mut expected = methods.names;
    expected.extend(["new", "deref", "deref_mut"].map(String::from));

    let reserved: BTreeSet<String> = RESERVED.iter().map(|name| name.to_string()).collect();
    assert_eq!(
        reserved.len(),
        RESERVED.len(),
        "RESERVED lists a name twice"
    );
    let missing: Vec<_> = expected.difference(&reserved).collect();
    let extra: Vec<_> = reserved.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "worker-macros/src/reserved.rs is out of date with worker-core/src/mediator.rs\n  \
         missing from RESERVED (public on the mediator): {missing:?}\n  \
         extra in RESERVED (not public on the mediator): {extra:?}"
    );
}
