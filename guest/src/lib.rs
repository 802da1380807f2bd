//! `runnel-guest`: what a Rust function needs to be a Runnel component.
//!
//! The host gives a function the imports of the `stream-function` world and
//! nothing else: no WASI. Rust's `std` on `wasm32-wasip2` imports WASI (its
//! panic hook writes to stderr), so functions are `#![no_std]` crates using
//! `alloc`. This crate supplies the rest:
//! - the bindings of `wit/runnel.wit` (imports as modules, the `Guest`
//!   trait to implement, and [`export_function!`] to export it);
//! - a global allocator (dlmalloc over the component's linear memory);
//! - a panic handler that logs the panic through the host's `logging`
//!   capability, then traps (the host retries, then dead-letters the record).
//!
//! ```ignore
//! #![no_std]
//! use runnel_guest::{Guest, HandlerError, Message};
//! struct MyFunction;
//! impl Guest for MyFunction {
//!     fn handle(message: Message) -> Result<(), HandlerError> { Ok(()) }
//! }
//! runnel_guest::export_function!(MyFunction);
//! ```
#![no_std]

extern crate alloc;

/// The generated bindings of the `stream-function` world.
pub mod bindings {
    wit_bindgen::generate!({
        world: "stream-function",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_function",
        default_bindings_module: "runnel_guest::bindings",
    });
}

pub use bindings::runnel::function::{clock, config, documents, logging, mail};
pub use bindings::runnel::function::types::Header;
pub use bindings::{Guest, HandlerError, Message, export_function};

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

#[cfg(target_arch = "wasm32")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use alloc::string::ToString;
    logging::log(logging::Level::Error, &info.to_string());
    core::arch::wasm32::unreachable()
}

// `memcmp`, `memcpy` and friends come from the target's bundled C library
// (pure functions: they import nothing).
#[cfg(target_arch = "wasm32")]
#[link(name = "c")]
unsafe extern "C" {}

/// The canonical ABI's allocator export. Rust's `std` provides it on
/// `wasm32-wasip2`; a `no_std` component must bring its own.
///
/// # Safety
/// Called only by the component model's canonical ABI, with a pointer and
/// size it obtained from this function (or null and 0).
#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cabi_realloc(old_ptr: *mut u8, old_len: usize, align: usize, new_len: usize) -> *mut u8 {
    use alloc::alloc::{Layout, alloc, realloc};
    if new_len == 0 {
        return align as *mut u8;
    }
    // SAFETY: the canonical ABI passes a power-of-two alignment and, for a
    // reallocation, the size and alignment of the earlier allocation.
    let ptr = unsafe {
        if old_len == 0 {
            alloc(Layout::from_size_align_unchecked(new_len, align))
        } else {
            realloc(old_ptr, Layout::from_size_align_unchecked(old_len, align), new_len)
        }
    };
    if ptr.is_null() {
        core::arch::wasm32::unreachable();
    }
    ptr
}
