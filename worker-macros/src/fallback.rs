//! What goes out when there are errors.
//!
//! The user's impl block, unchanged, so that their own code keeps compiling and calls to their
//! methods do not turn into "no method found" errors; the expansion of what passed the checks
//! (possibly nothing), so that names like `PrimesMediator` still resolve; and our errors, each
//! at its own span. The user sees our messages and not a cascade caused by missing items.

use proc_macro2::TokenStream;
use quote::quote;

pub fn expand(input: TokenStream, partial: TokenStream, errors: syn::Error) -> TokenStream {
    let errors = errors.into_compile_error();
    quote! {
        #input
        #partial
        #errors
    }
}
