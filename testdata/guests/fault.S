/* fault: executes an undefined instruction with no IDT loaded, which
 * escalates to a triple fault (KVM_EXIT_SHUTDOWN). */
	.intel_syntax noprefix
	.code64
	.section .text
	.globl _start
_start:
	ud2
