//! The names `#[worker]` refuses for proxied methods are exactly the public methods of the
//! generated mediator: its constructor, the `pub fn`s of `Mediator` (reached through `Deref`)
//! and `deref`/`deref_mut`. A name missing from the list would let a proxy silently hide a
//! `Mediator` method; an extra name refuses a method for nothing.

use std::collections::BTreeSet;

use syn::visit::Visit;

include!("../worker-macros/src/reserved.rs");

/// Collects the `pub fn`s of every `impl ... <face><...>` block.
struct MediatorMethods {
    face: &'static str,
    names: BTreeSet<String>,
}

impl<'ast> Visit<'ast> for MediatorMethods {
    fn visit_item_impl(&mut self, item: &'ast syn::ItemImpl) {
        let is_mediator = matches!(&*item.self_ty, syn::Type::Path(path)
            if path.path.segments.last().is_some_and(|s| s.ident == self.face));
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

/// The public methods of `face` in the runtime's file `path`.
fn public_methods(path: &str, face: &'static str) -> BTreeSet<String> {
    let path = format!("{}/worker-core/src/{path}", env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let file = syn::parse_file(&source).unwrap_or_else(|e| panic!("parsing {path}: {e}"));
    let mut methods = MediatorMethods {
        face,
        names: BTreeSet::new(),
    };
    methods.visit_file(&file);
    methods.names
}

#[test]
fn reserved_names_are_the_faces_public_methods() {
    let mut expected = public_methods("mediator.rs", "Mediator");
    expected.extend(["new", "deref", "deref_mut"].map(String::from));
    // The shared face: `XPool::builder`, `SharedPool`'s methods, and `Clone::clone`.
    expected.extend(public_methods("shared/mod.rs", "SharedPool"));
    expected.extend(["builder", "clone"].map(String::from));
    // A connected pool (`XPool::remote`): `RemotePool`'s methods.
    expected.extend(public_methods("remote/caller.rs", "RemotePool"));
    expected.insert("remote".to_owned());

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
        "worker-macros/src/reserved.rs is out of date with the faces (mediator.rs, shared/mod.rs)\n  \
         missing from RESERVED (public on a face): {missing:?}\n  \
         extra in RESERVED (not public on a face): {extra:?}"
    );
}
